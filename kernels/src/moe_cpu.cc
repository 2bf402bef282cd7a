// CPU kernel of ai.moefy::DynamicMoE, domain version 1 (DESIGN.md section 3).
//
//   Y [, active] = DynamicMoE(X, norms, W1, B1, W2 [, B2] [, scale_index] [, threshold])
//
// Algorithm: route every token (expert e runs iff norms[e] >= threshold[s] * max_k norms[k]; the argmax always
// runs) and build per-expert token lists (CSR, tokens ascending). Experts are dealt into a fixed number of groups;
// each group is one task on ONNX Runtime's intra-op pool (KernelContext_ParallelFor) and adds its experts, in
// ascending order, into its own accumulator (group 0: Y itself); the accumulators are then added to Y in group order,
// so results do not depend on scheduling. Per expert and chunk of up to 512 tokens:
//  - fused AVX-512 path (constant W1/W2 pre-packed at kernel creation): the micro-kernel reads the X rows through
//    the token indices, bias + activation run on the hidden tile, and the second GEMM adds straight into the token
//    rows of the accumulator;
//  - otherwise: gather the X rows, OpenBLAS sgemm with the expert's W1 column block, bias + activation, sgemm with
//    the expert's W2 row block, scatter-add.
// Without pre-packed weights, a call where every token runs every expert takes a dense OpenBLAS path (hidden
// columns, then output columns, split over threads). Buffers live in a per-kernel workspace pool that only grows.
#include "moe_cpu.h"
#include "gemm_avx512.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace moefy {
namespace {

enum class Act { Relu, GeluTanh, Gelu };

// ---------------------------------------------------------------------------------------------------------------
// Activations, written so that GCC vectorises the loops (no calls inside).

static inline float exp_approx(float x) {
  // e^x for x in [-87, 88]: Cody-Waite range reduction + degree-6 polynomial; relative error ~2e-7.
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693145751953125f;
  r = r - k * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

#if defined(__AVX512F__)
static inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

static inline __m512 act512(__m512 x, Act act) {
  switch (act) {
    case Act::Relu:
      return _mm512_max_ps(x, _mm512_setzero_ps());
    case Act::GeluTanh: {
      const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
      const __m512 u2 = _mm512_mul_ps(_mm512_set1_ps(1.5957691216057308f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
      const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), u2));
      return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    }
    case Act::Gelu: {
      const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
      const __m512 ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(x)));
      const __m512 z = _mm512_mul_ps(ax, _mm512_set1_ps(0.7071067811865476f));
      const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), z, _mm512_set1_ps(1.0f)));
      __m512 p = _mm512_set1_ps(1.061405429f);
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
      const __m512 ez = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, z)));
      const __m512 e = _mm512_fnmadd_ps(_mm512_mul_ps(p, t), ez, _mm512_set1_ps(1.0f));
      const __m512 erf = _mm512_castsi512_ps(
          _mm512_or_si512(_mm512_castps_si512(e), _mm512_and_si512(sign, _mm512_castps_si512(x))));
      return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.0f), erf));
    }
  }
  return x;
}

static void bias_act_row(float* h, const float* b, int64_t n, Act act) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(h + i, act512(_mm512_add_ps(_mm512_loadu_ps(h + i), _mm512_loadu_ps(b + i)), act));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, h + i), _mm512_maskz_loadu_ps(m, b + i));
    _mm512_mask_storeu_ps(h + i, m, act512(v, act));
  }
}
#else
static void bias_act_row(float* h, const float* b, int64_t n, Act act) {
  switch (act) {
    case Act::Relu:
      for (int64_t i = 0; i < n; ++i) {
        const float v = h[i] + b[i];
        h[i] = v > 0.0f ? v : 0.0f;
      }
      break;
    case Act::GeluTanh:
      // 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
      for (int64_t i = 0; i < n; ++i) {
        const float x = h[i] + b[i];
        const float u2 = 1.5957691216057308f * (x + 0.044715f * x * x * x);
        h[i] = x / (1.0f + exp_approx(-u2));
      }
      break;
    case Act::Gelu:
      // 0.5 x (1 + erf(x / sqrt 2)); erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7).
      for (int64_t i = 0; i < n; ++i) {
        const float x = h[i] + b[i];
        const float z = std::fabs(x) * 0.7071067811865476f;
        const float t = 1.0f / (1.0f + 0.3275911f * z);
        float p = 1.061405429f;
        p = p * t - 1.453152027f;
        p = p * t + 1.421413741f;
        p = p * t - 0.284496736f;
        p = p * t + 0.254829592f;
        const float e = 1.0f - p * t * exp_approx(-z * z);
        const float erf = x < 0.0f ? -e : e;
        h[i] = 0.5f * x * (1.0f + erf);
      }
      break;
  }
}
#endif

// ---------------------------------------------------------------------------------------------------------------

struct Slot {
  std::vector<float> acc;  // [N, D] accumulator (unused for the slot that writes Y)
  std::vector<float> a;    // gathered X rows [TM, D]
  std::vector<float> h;    // hidden [TM, S] (or [TM, E*S] on the dense path)
  std::vector<float> z;    // expert output [TM, D]
  std::vector<const float*> arows;  // fused path: A row pointers
  std::vector<float*> hrows, crows;  // fused path: H / C row pointers
};

struct Workspace {
  std::vector<int32_t> scale_of_l;    // [L]
  std::vector<uint8_t> mask;          // [N, E]
  std::vector<int64_t> counts;        // [E]
  std::vector<int64_t> offsets;       // [E+1]
  std::vector<int64_t> tokens;        // CSR token lists
  std::vector<float> hidden;  // dense path [rows, E*S]
  std::vector<std::unique_ptr<Slot>> slots;  // one per expert group
  std::vector<int32_t> group_of;             // [E]
  std::vector<int64_t> order, load;
  struct Chunk {
    int64_t expert, begin, count;
  };
  std::vector<Chunk> chunks;  // few-experts path
};

struct Kernel {
  const OrtApi* api;
  int64_t num_experts = 0;
  Act act = Act::Relu;
  std::vector<int64_t> patch_nums;
  std::vector<int64_t> scale_start;  // token offset of each scale in the full sequence
  int64_t full_len = 0;
  std::vector<float> threshold;  // per scale
  int64_t groups = 4;            // expert groups (parallel tasks of the sparse path)
  // Pre-packed constant weights for the fused AVX-512 path (empty when W1/W2 are not constant initializers).
  bool packed = false;
  int64_t pD = 0, pES = 0;
  std::vector<float> w1p, w2p;
  int64_t w1p_stride = 0, w2p_stride = 0;  // floats per expert
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

struct Error {
  std::string msg;
};

static std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(d[i]);
  }
  return s + "]";
}

struct TensorIn {
  const OrtValue* v = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  const void* data = nullptr;
  int64_t size() const {
    int64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }
};

static void check(const OrtApi* api, OrtStatus* st) {
  if (st) {
    std::string m = api->GetErrorMessage(st);
    api->ReleaseStatus(st);
    throw Error{m};
  }
}

static bool get_input(const OrtApi* api, OrtKernelContext* ctx, size_t count, size_t index, TensorIn& t) {
  if (index >= count) return false;
  const OrtValue* v = nullptr;
  check(api, api->KernelContext_GetInput(ctx, index, &v));
  if (v == nullptr) return false;
  int is_tensor = 0;
  check(api, api->IsTensor(v, &is_tensor));
  if (!is_tensor) throw Error{"DynamicMoE: input " + std::to_string(index) + " is not a tensor"};
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(api, api->GetTensorTypeAndShape(v, &info));
  size_t nd = 0;
  OrtStatus* st = api->GetTensorElementType(info, &t.type);
  if (!st) st = api->GetDimensionsCount(info, &nd);
  if (!st) {
    t.dims.resize(nd);
    st = api->GetDimensions(info, t.dims.data(), nd);
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  check(api, st);
  void* p = nullptr;
  check(api, api->GetTensorMutableData(const_cast<OrtValue*>(v), &p));
  t.v = v;
  t.data = p;
  return true;
}

static const char* const kInputNames[] = {"X", "norms", "W1", "B1", "W2", "B2", "scale_index", "threshold"};

static void expect_float(const TensorIn& t, int index) {
  if (t.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error{std::string("DynamicMoE: input ") + kInputNames[index] + " must be float32 on the CPU kernel"};
}

static void expect_shape(const TensorIn& t, int index, const std::vector<int64_t>& want) {
  if (t.dims != want)
    throw Error{std::string("DynamicMoE: input ") + kInputNames[index] + " has shape " + dims_str(t.dims) +
                ", expected " + dims_str(want)};
}

// ParallelFor wrapper: runs fn(i) for i in [0, n) on ORT's intra-op pool; exceptions are captured.
struct ParCtx {
  const OrtApi* api;
  OrtKernelContext* ctx;
};

template <class F>
static void parallel_for(const ParCtx& pc, size_t n, F&& fn) {
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
    try {
      (*cl->fn)(i);
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lk(cl->mu);
      if (!cl->failed.exchange(true)) cl->msg = e.msg;
    } catch (const std::bad_alloc&) {
      std::lock_guard<std::mutex> lk(cl->mu);
      if (!cl->failed.exchange(true)) cl->msg = "DynamicMoE: out of memory";
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(cl->mu);
      if (!cl->failed.exchange(true)) cl->msg = std::string("DynamicMoE: ") + e.what();
    } catch (...) {
      std::lock_guard<std::mutex> lk(cl->mu);
      if (!cl->failed.exchange(true)) cl->msg = "DynamicMoE: unknown error";
    }
  };
  if (n == 1) {
    tramp(&c, 0);
  } else {
    check(pc.api, pc.api->KernelContext_ParallelFor(pc.ctx, tramp, n, n, &c));
  }
  if (c.failed.load()) throw Error{c.msg};
}

template <class T>
static void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

static void compute(Kernel* k, OrtKernelContext* ctx) {
  const OrtApi* api = k->api;
  size_t nin = 0, nout = 0;
  check(api, api->KernelContext_GetInputCount(ctx, &nin));
  check(api, api->KernelContext_GetOutputCount(ctx, &nout));
  TensorIn X, norms, W1, B1, W2, B2, SI, TH;
  const char* missing = nullptr;
  if (!get_input(api, ctx, nin, 0, X)) missing = "X";
  else if (!get_input(api, ctx, nin, 1, norms)) missing = "norms";
  else if (!get_input(api, ctx, nin, 2, W1)) missing = "W1";
  else if (!get_input(api, ctx, nin, 3, B1)) missing = "B1";
  else if (!get_input(api, ctx, nin, 4, W2)) missing = "W2";
  if (missing) throw Error{std::string("DynamicMoE: required input ") + missing + " is missing"};
  const bool has_b2 = get_input(api, ctx, nin, 5, B2);
  const bool has_si = get_input(api, ctx, nin, 6, SI);
  const bool has_th = get_input(api, ctx, nin, 7, TH);

  expect_float(X, 0);
  expect_float(norms, 1);
  expect_float(W1, 2);
  expect_float(B1, 3);
  expect_float(W2, 4);
  if (has_b2) expect_float(B2, 5);
  if (X.dims.size() != 3) throw Error{"DynamicMoE: X must be [B, L, D], got " + dims_str(X.dims)};
  const int64_t B = X.dims[0], L = X.dims[1], D = X.dims[2];
  const int64_t E = k->num_experts;
  expect_shape(norms, 1, {B, L, E});
  if (W1.dims.size() != 2 || W1.dims[0] != D || W1.dims[1] <= 0 || W1.dims[1] % E != 0)
    throw Error{"DynamicMoE: W1 has shape " + dims_str(W1.dims) + ", expected [" + std::to_string(D) +
                ", E*S] with E = num_experts = " + std::to_string(E)};
  const int64_t ES = W1.dims[1], S = ES / E;
  expect_shape(B1, 3, {ES});
  expect_shape(W2, 4, {ES, D});
  if (has_b2) expect_shape(B2, 5, {D});
  if (D > std::numeric_limits<int32_t>::max() / 2 || ES > std::numeric_limits<int32_t>::max() / 2)
    throw Error{"DynamicMoE: dimensions too large"};

  const int64_t nscales = static_cast<int64_t>(k->patch_nums.size());
  const float* thr = k->threshold.data();
  if (has_th) {
    if (TH.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) throw Error{"DynamicMoE: input threshold must be float32"};
    if (TH.size() != nscales)
      throw Error{"DynamicMoE: input threshold has shape " + dims_str(TH.dims) + ", expected [" +
                  std::to_string(nscales) + "] (one value per scale)"};
    thr = static_cast<const float*>(TH.data);
  }
  int64_t forced_scale = -1;
  if (has_si) {
    if (SI.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 && SI.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
      throw Error{"DynamicMoE: input scale_index must be int64"};
    if (SI.size() != 1) throw Error{"DynamicMoE: input scale_index must be a scalar, got shape " + dims_str(SI.dims)};
    forced_scale = SI.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? *static_cast<const int64_t*>(SI.data)
                                                                   : *static_cast<const int32_t*>(SI.data);
    if (forced_scale < 0 || forced_scale >= nscales)
      throw Error{"DynamicMoE: scale_index " + std::to_string(forced_scale) + " out of range [0, " +
                  std::to_string(nscales) + ")"};
  }

  // Outputs.
  OrtValue* Yv = nullptr;
  {
    const int64_t yd[3] = {B, L, D};
    check(api, api->KernelContext_GetOutput(ctx, 0, yd, 3, &Yv));
  }
  float* Y = nullptr;
  check(api, api->GetTensorMutableData(Yv, reinterpret_cast<void**>(&Y)));
  int32_t* active_out = nullptr;
  if (nout > 1) {
    OrtValue* Av = nullptr;
    const int64_t ad[2] = {B, L};
    OrtStatus* st = api->KernelContext_GetOutput(ctx, 1, ad, 2, &Av);
    if (st) api->ReleaseStatus(st);
    else if (Av) check(api, api->GetTensorMutableData(Av, reinterpret_cast<void**>(&active_out)));
  }
  const int64_t N = B * L;
  if (N == 0 || D == 0) return;

  std::unique_ptr<Workspace> wsp = k->acquire();
  struct Giveback {
    Kernel* k;
    std::unique_ptr<Workspace>* w;
    ~Giveback() { k->release(std::move(*w)); }
  } giveback{k, &wsp};
  Workspace& ws = *wsp;

  // Scale of each position.
  grow(ws.scale_of_l, static_cast<size_t>(L));
  int32_t* scale_of_l = ws.scale_of_l.data();
  if (forced_scale >= 0) {
    std::fill(scale_of_l, scale_of_l + L, static_cast<int32_t>(forced_scale));
  } else if (L == k->full_len) {
    for (int64_t s = 0; s < nscales; ++s)
      for (int64_t l = k->scale_start[s]; l < k->scale_start[s + 1]; ++l) scale_of_l[l] = static_cast<int32_t>(s);
  } else {
    int64_t found = -1, matches = 0;
    for (int64_t s = 0; s < nscales; ++s)
      if (k->patch_nums[s] * k->patch_nums[s] == L) {
        found = s;
        ++matches;
      }
    if (matches != 1) {
      std::string pn;
      for (auto p : k->patch_nums) pn += (pn.empty() ? "" : ",") + std::to_string(p);
      throw Error{"DynamicMoE: cannot infer the scale of the tokens: L = " + std::to_string(L) +
                  " is neither the full sequence (sum of pn^2 = " + std::to_string(k->full_len) +
                  ") nor pn^2 of exactly one scale (patch_nums " + pn + "); pass scale_index"};
    }
    std::fill(scale_of_l, scale_of_l + L, static_cast<int32_t>(found));
  }

  // Routing.
  const float* NR = static_cast<const float*>(norms.data);
  grow(ws.mask, static_cast<size_t>(N * E));
  uint8_t* mask = ws.mask.data();
  ws.counts.assign(static_cast<size_t>(E), 0);
  int64_t total_pairs = 0;
  for (int64_t t = 0; t < N; ++t) {
    const float* nr = NR + t * E;
    int64_t am = 0;
    float m = nr[0];
    for (int64_t e = 1; e < E; ++e)
      if (nr[e] > m || (m != m && nr[e] == nr[e])) {
        m = nr[e];
        am = e;
      }
    const float cut = thr[scale_of_l[t % L]] * m;
    uint8_t* mk = mask + t * E;
    int32_t cnt = 0;
    for (int64_t e = 0; e < E; ++e) {
      const uint8_t on = (nr[e] >= cut) || e == am;
      mk[e] = on;
      cnt += on;
      ws.counts[e] += on;
    }
    if (active_out) active_out[t] = cnt;
    total_pairs += cnt;
  }

  const float* Xd = static_cast<const float*>(X.data);
  const float* W1d = static_cast<const float*>(W1.data);
  const float* B1d = static_cast<const float*>(B1.data);
  const float* W2d = static_cast<const float*>(W2.data);
  const float* B2d = has_b2 ? static_cast<const float*>(B2.data) : nullptr;
  const ParCtx pc{api, ctx};

  // Y starts as B2 (or 0).
  for (int64_t t = 0; t < N; ++t) {
    float* y = Y + t * D;
    if (B2d) std::memcpy(y, B2d, sizeof(float) * D);
    else std::memset(y, 0, sizeof(float) * D);
  }

  const int64_t TM = 512;  // max rows per expert task
  // With pre-packed weights the fused path is as fast as the dense one even when every expert runs.
  const bool fused = k->packed && k->pD == D && k->pES == ES;
  if (total_pairs == N * E && !fused) {
    // Dense path: every token runs every expert. Row blocks of up to RB rows; phase 1 splits the hidden columns
    // (H = act(X W1 + B1)), phase 2 splits the output columns (Y += H W2). Each weight block is packed once per row
    // block, every GEMM keeps the full row count, and no task writes where another one does.
    const int64_t RB = 512;
    const int64_t nrb = (N + RB - 1) / RB;
    const int64_t rows_max = (N + nrb - 1) / nrb;
    const int64_t HC = std::max<int64_t>(64, std::min<int64_t>(ES, 512));  // hidden columns per phase-1 task
    const int64_t DC = std::max<int64_t>(64, std::min<int64_t>(D, 256));   // output columns per phase-2 task
    const int64_t nhc = (ES + HC - 1) / HC, ndc = (D + DC - 1) / DC;
    grow(ws.hidden, static_cast<size_t>(rows_max * ES));
    float* Hd = ws.hidden.data();
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * N / nrb, r1 = (rb + 1) * N / nrb;
      const int m = static_cast<int>(r1 - r0);
      parallel_for(pc, static_cast<size_t>(nhc), [&](size_t j) {
        const int64_t c0 = static_cast<int64_t>(j) * HC, c1 = std::min(ES, c0 + HC);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, static_cast<int>(c1 - c0), static_cast<int>(D), 1.0f,
                    Xd + r0 * D, static_cast<int>(D), W1d + c0, static_cast<int>(ES), 0.0f, Hd + c0,
                    static_cast<int>(ES));
        for (int r = 0; r < m; ++r) bias_act_row(Hd + r * ES + c0, B1d + c0, c1 - c0, k->act);
      });
      parallel_for(pc, static_cast<size_t>(ndc), [&](size_t j) {
        const int64_t c0 = static_cast<int64_t>(j) * DC, c1 = std::min(D, c0 + DC);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, static_cast<int>(c1 - c0), static_cast<int>(ES),
                    1.0f, Hd, static_cast<int>(ES), W2d + c0, static_cast<int>(D), 1.0f, Y + r0 * D + c0,
                    static_cast<int>(D));
      });
    }
    return;
  }

  // Sparse path: CSR token lists per expert.
  ws.offsets.assign(static_cast<size_t>(E + 1), 0);
  for (int64_t e = 0; e < E; ++e) ws.offsets[e + 1] = ws.offsets[e] + ws.counts[e];
  grow(ws.tokens, static_cast<size_t>(total_pairs));
  {
    std::vector<int64_t>& cur = ws.counts;  // reuse as cursor
    for (int64_t e = 0; e < E; ++e) cur[e] = ws.offsets[e];
    for (int64_t t = 0; t < N; ++t) {
      const uint8_t* mk = mask + t * E;
      for (int64_t e = 0; e < E; ++e)
        if (mk[e]) ws.tokens[cur[e]++] = t;
    }
  }
  // Fixed expert groups make the result independent of thread scheduling: group g accumulates its experts, in
  // ascending expert order, into its own accumulator (group 0 into Y), and the accumulators are added to Y in group
  // order. The group count depends only on the shapes and the machine; experts go to groups by token count
  // (largest first, to the least loaded group) for balance.
  // Each extra group costs a zeroed [N, D] accumulator and a pass over Y; fewer groups balance worse. Measured on
  // 2 cores (D 1024, S 128): one group per core from 1024 tokens on, two per core below.
  int64_t G = std::min<int64_t>(E, std::min<int64_t>(16, N >= 1024 ? k->groups : 2 * k->groups));
  {
    const int64_t acc_bytes = N * D * static_cast<int64_t>(sizeof(float));
    const int64_t cap = int64_t(512) << 20;  // extra accumulator memory
    G = std::max<int64_t>(1, std::min<int64_t>(G, 1 + cap / std::max<int64_t>(acc_bytes, 1)));
  }
  ws.group_of.assign(static_cast<size_t>(E), 0);
  {
    ws.order.resize(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) ws.order[e] = e;
    std::stable_sort(ws.order.begin(), ws.order.end(), [&](int64_t x, int64_t y) {
      return ws.offsets[x + 1] - ws.offsets[x] > ws.offsets[y + 1] - ws.offsets[y];
    });
    ws.load.assign(static_cast<size_t>(G), 0);
    for (int64_t e : ws.order) {
      int64_t best = 0;
      for (int64_t g = 1; g < G; ++g)
        if (ws.load[g] < ws.load[best]) best = g;
      ws.group_of[e] = static_cast<int32_t>(best);
      ws.load[best] += ws.offsets[e + 1] - ws.offsets[e];
    }
  }
  while (ws.slots.size() < static_cast<size_t>(G)) ws.slots.emplace_back(new Slot());
  for (int64_t g = 0; g < G; ++g) {
    Slot* slot = ws.slots[g].get();
    if (fused) {
      grow(slot->h, static_cast<size_t>(TM * (S + 32)));
      grow(slot->arows, static_cast<size_t>(TM));
      grow(slot->hrows, static_cast<size_t>(TM));
      grow(slot->crows, static_cast<size_t>(TM));
    } else {
      grow(slot->a, static_cast<size_t>(TM * D));
      grow(slot->h, static_cast<size_t>(TM * S));
      grow(slot->z, static_cast<size_t>(TM * D));
    }
    if (g > 0) grow(slot->acc, static_cast<size_t>(N * D));
  }

  const int64_t* tokens = ws.tokens.data();
  // One expert chunk (rows [begin, begin+m) of expert e's token list) into accumulator acc.
  auto run_chunk = [&](Slot* slot, float* acc, int64_t e, int64_t begin, int m) {
    const int64_t* tk = tokens + begin;
#if defined(__AVX512F__)
    if (fused) {
      const int64_t Spad = (S + avx512::NR - 1) / avx512::NR * avx512::NR;
      float* H = slot->h.data();
      const float** ar = slot->arows.data();
      float** hr = slot->hrows.data();
      float** cr = slot->crows.data();
      for (int r = 0; r < m; ++r) {
        ar[r] = Xd + tk[r] * D;
        hr[r] = H + r * Spad;
        cr[r] = acc + tk[r] * D;
      }
      avx512::gemm_rows(m, D, S, ar, k->w1p.data() + e * k->w1p_stride, avx512::NR, D * avx512::NR, hr, false);
      for (int r = 0; r < m; ++r) bias_act_row(hr[r], B1d + e * S, S, k->act);
      if (k->w2p.empty())  // W2's expert rows are already contiguous: read them in place
        avx512::gemm_rows(m, S, D, const_cast<const float* const*>(hr), W2d + e * S * D, D, avx512::NR, cr, true);
      else
        avx512::gemm_rows(m, S, D, const_cast<const float* const*>(hr), k->w2p.data() + e * k->w2p_stride,
                          avx512::NR, S * avx512::NR, cr, true);
      return;
    }
#endif
    float* A = slot->a.data();
    float* H = slot->h.data();
    float* Z = slot->z.data();
    for (int r = 0; r < m; ++r) std::memcpy(A + r * D, Xd + tk[r] * D, sizeof(float) * D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, static_cast<int>(S), static_cast<int>(D), 1.0f, A,
                static_cast<int>(D), W1d + e * S, static_cast<int>(ES), 0.0f, H, static_cast<int>(S));
    for (int r = 0; r < m; ++r) bias_act_row(H + r * S, B1d + e * S, S, k->act);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, static_cast<int>(D), static_cast<int>(S), 1.0f, H,
                static_cast<int>(S), W2d + e * S * D, static_cast<int>(D), 0.0f, Z, static_cast<int>(D));
    for (int r = 0; r < m; ++r) {
      float* y = acc + tk[r] * D;
      const float* z = Z + r * D;
      for (int64_t d = 0; d < D; ++d) y[d] += z[d];
    }
  };

  if (G == E && E < k->groups) {
    // Few experts (one per group): the chunks of one expert touch disjoint token rows, so they run in parallel
    // too, each on its own scratch; the result stays independent of scheduling.
    ws.chunks.clear();
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = ws.offsets[e + 1] - ws.offsets[e];
      if (n == 0) continue;
      const int64_t nch = std::min<int64_t>(std::max<int64_t>((n + TM - 1) / TM, 8), (n + 47) / 48);
      for (int64_t c = 0; c < nch; ++c) {
        const int64_t a = c * n / nch, b = (c + 1) * n / nch;
        if (b > a) ws.chunks.push_back({e, ws.offsets[e] + a, b - a});
      }
    }
    while (ws.slots.size() < ws.chunks.size()) ws.slots.emplace_back(new Slot());
    for (size_t i = 0; i < ws.chunks.size(); ++i) {
      Slot* slot = ws.slots[i].get();
      const size_t rows = static_cast<size_t>(ws.chunks[i].count);
      if (fused) {
        grow(slot->h, rows * static_cast<size_t>(S + 32));
        grow(slot->arows, rows);
        grow(slot->hrows, rows);
        grow(slot->crows, rows);
      } else {
        grow(slot->a, rows * static_cast<size_t>(D));
        grow(slot->h, rows * static_cast<size_t>(S));
        grow(slot->z, rows * static_cast<size_t>(D));
      }
    }
    for (int64_t g = 1; g < G; ++g) std::memset(ws.slots[g]->acc.data(), 0, sizeof(float) * N * D);
    parallel_for(pc, ws.chunks.size(), [&](size_t i) {
      const auto& c = ws.chunks[i];
      float* acc = c.expert == 0 ? Y : ws.slots[c.expert]->acc.data();
      run_chunk(ws.slots[i].get(), acc, c.expert, c.begin, static_cast<int>(c.count));
    });
  } else
  parallel_for(pc, static_cast<size_t>(G), [&](size_t gi) {
    const int64_t g = static_cast<int64_t>(gi);
    Slot* slot = ws.slots[g].get();
    float* acc = Y;
    if (g > 0) {
      acc = slot->acc.data();
      std::memset(acc, 0, sizeof(float) * N * D);
    }
    for (int64_t e = 0; e < E; ++e) {
      if (ws.group_of[e] != g) continue;
      const int64_t n = ws.offsets[e + 1] - ws.offsets[e];
      for (int64_t c0 = 0; c0 < n; c0 += TM)
        run_chunk(slot, acc, e, ws.offsets[e] + c0, static_cast<int>(std::min<int64_t>(TM, n - c0)));
    }
  });

  // Add the other groups' accumulators to Y, in group order.
  if (G > 1) {
    const int64_t RB = 64;
    const size_t nblk = static_cast<size_t>((N + RB - 1) / RB);
    parallel_for(pc, nblk, [&](size_t b) {
      const int64_t r0 = static_cast<int64_t>(b) * RB, r1 = std::min(N, r0 + RB);
      for (int64_t g = 1; g < G; ++g) {
        const float* src = ws.slots[g]->acc.data();
        for (int64_t i = r0 * D; i < r1 * D; ++i) Y[i] += src[i];
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Custom-op descriptor.

static std::string attr_string(const OrtApi* api, const OrtKernelInfo* info, const char* name, bool* present) {
  size_t size = 0;
  OrtStatus* st = api->KernelInfoGetAttribute_string(info, name, nullptr, &size);
  if (st) {
    api->ReleaseStatus(st);
    *present = false;
    return {};
  }
  std::string s(size, '\0');
  check(api, api->KernelInfoGetAttribute_string(info, name, &s[0], &size));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  *present = true;
  return s;
}

template <class T, class Getter>
static bool attr_array(const OrtApi* api, const OrtKernelInfo* info, const char* name, Getter get,
                       std::vector<T>* out) {
  size_t size = 0;
  OrtStatus* st = (api->*get)(info, name, nullptr, &size);
  if (st) {
    api->ReleaseStatus(st);
    return false;
  }
  out->resize(size);
  if (size) check(api, (api->*get)(info, name, out->data(), &size));
  return true;
}

// When W1 and W2 are constant initializers, packs them once for the fused AVX-512 path.
static void prepack(Kernel* k, const OrtKernelInfo* info) {
#if defined(__AVX512F__)
  const char* mode = std::getenv("MOEFY_CPU_GEMM");
  if (mode && std::string(mode) == "blas") return;
  const OrtApi* api = k->api;
  size_t nin = 0;
  if (OrtStatus* st = api->KernelInfo_GetInputCount(info, &nin)) {
    api->ReleaseStatus(st);
    return;
  }
  if (nin < 5) return;
  const OrtValue* w[2] = {nullptr, nullptr};
  const size_t idx[2] = {2, 4};
  std::vector<int64_t> dims[2];
  for (int i = 0; i < 2; ++i) {
    int is_const = 0;
    OrtStatus* st = api->KernelInfoGetConstantInput_tensor(info, idx[i], &is_const, &w[i]);
    if (st) {
      api->ReleaseStatus(st);
      return;
    }
    if (!is_const || !w[i]) return;
    OrtTensorTypeAndShapeInfo* ti = nullptr;
    if ((st = api->GetTensorTypeAndShape(w[i], &ti))) {
      api->ReleaseStatus(st);
      return;
    }
    ONNXTensorElementDataType et = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    size_t nd = 0;
    st = api->GetTensorElementType(ti, &et);
    if (!st) st = api->GetDimensionsCount(ti, &nd);
    if (!st) {
      dims[i].resize(nd);
      st = api->GetDimensions(ti, dims[i].data(), nd);
    }
    api->ReleaseTensorTypeAndShapeInfo(ti);
    if (st) {
      api->ReleaseStatus(st);
      return;
    }
    if (et != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || nd != 2) return;
  }
  const int64_t D = dims[0][0], ES = dims[0][1], E = k->num_experts;
  if (D <= 0 || ES <= 0 || ES % E != 0 || dims[1][0] != ES || dims[1][1] != D) return;  // compute reports the error
  const int64_t S = ES / E;
  const float* W1 = nullptr;
  const float* W2 = nullptr;
  OrtStatus* st = api->GetTensorMutableData(const_cast<OrtValue*>(w[0]), reinterpret_cast<void**>(const_cast<float**>(&W1)));
  if (!st) st = api->GetTensorMutableData(const_cast<OrtValue*>(w[1]), reinterpret_cast<void**>(const_cast<float**>(&W2)));
  if (st) {
    api->ReleaseStatus(st);
    return;
  }
  const int64_t NR = avx512::NR;
  k->w1p_stride = (S + NR - 1) / NR * D * NR;
  k->w2p_stride = (D + NR - 1) / NR * S * NR;
  k->w1p.resize(static_cast<size_t>(E * k->w1p_stride));
  // W2's expert blocks are contiguous and usable in place; packing them too is 10-30% faster but doubles the
  // memory of the pre-packed copy. MOEFY_LOW_MEMORY=1 packs W1 only.
  const char* low = std::getenv("MOEFY_LOW_MEMORY");
  const bool pack_w2 = !(low && low[0] == '1');
  if (pack_w2) k->w2p.resize(static_cast<size_t>(E * k->w2p_stride));
  for (int64_t e = 0; e < E; ++e) {
    avx512::pack_b(W1, ES, D, e * S, S, k->w1p.data() + e * k->w1p_stride);
    if (pack_w2) avx512::pack_b(W2 + e * S * D, D, S, 0, D, k->w2p.data() + e * k->w2p_stride);
  }
  k->pD = D;
  k->pES = ES;
  k->packed = true;
#else
  (void)k;
  (void)info;
#endif
}

static Kernel* create_kernel(const OrtApi* api, const OrtKernelInfo* info) {
  std::unique_ptr<Kernel> k(new Kernel());
  k->api = api;
  int64_t ne = 0;
  OrtStatus* st = api->KernelInfoGetAttribute_int64(info, "num_experts", &ne);
  if (st) {
    api->ReleaseStatus(st);
    throw Error{"DynamicMoE: attribute num_experts is required"};
  }
  if (ne < 1) throw Error{"DynamicMoE: num_experts must be >= 1, got " + std::to_string(ne)};
  k->num_experts = ne;
  bool present = false;
  std::string act = attr_string(api, info, "activation", &present);
  if (!present || act == "relu") k->act = Act::Relu;
  else if (act == "gelu_tanh") k->act = Act::GeluTanh;
  else if (act == "gelu") k->act = Act::Gelu;
  else throw Error{"DynamicMoE: unknown activation \"" + act + "\" (relu, gelu_tanh, gelu)"};
  if (!attr_array<int64_t>(api, info, "patch_nums", &OrtApi::KernelInfoGetAttributeArray_int64, &k->patch_nums) ||
      k->patch_nums.empty())
    throw Error{"DynamicMoE: attribute patch_nums (one side length per scale) is required"};
  k->scale_start.assign(1, 0);
  for (auto p : k->patch_nums) {
    if (p < 1) throw Error{"DynamicMoE: patch_nums entries must be >= 1"};
    k->scale_start.push_back(k->scale_start.back() + p * p);
  }
  k->full_len = k->scale_start.back();
  if (!attr_array<float>(api, info, "threshold", &OrtApi::KernelInfoGetAttributeArray_float, &k->threshold))
    k->threshold.assign(k->patch_nums.size(), 0.0f);
  if (k->threshold.size() != k->patch_nums.size())
    throw Error{"DynamicMoE: attribute threshold has " + std::to_string(k->threshold.size()) +
                " values, patch_nums has " + std::to_string(k->patch_nums.size()) + " scales"};
  try {
    prepack(k.get(), info);
  } catch (const std::bad_alloc&) {  // no memory for the packed copy: read the weights in place
    k->packed = false;
    std::vector<float>().swap(k->w1p);
    std::vector<float>().swap(k->w2p);
  }
  k->groups = std::min<int64_t>(16, std::max<int64_t>(2, static_cast<int64_t>(std::thread::hardware_concurrency())));
  if (const char* g = std::getenv("MOEFY_KERNEL_GROUPS"); g && std::atoi(g) > 0) k->groups = std::min(16, std::atoi(g));
  if (const char* tr = std::getenv("MOEFY_KERNEL_TRACE"); tr && tr[0] == '1')
    std::fprintf(stderr, "moefy: DynamicMoE CPU kernel created (num_experts %lld, %zu scales, weights %s)\n",
                 static_cast<long long>(k->num_experts), k->patch_nums.size(),
                 k->packed ? "pre-packed" : "read per call");
  return k.release();
}

static OrtStatus* make_status(const OrtApi* api, const std::string& m) { return api->CreateStatus(ORT_FAIL, m.c_str()); }

struct OpDef : OrtCustomOp {
  const OrtApi* api = nullptr;
};

static OrtStatusPtr ORT_API_CALL CreateKernelV2(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                                void** kernel) {
  *kernel = nullptr;
  try {
    *kernel = create_kernel(api, info);
    return nullptr;
  } catch (const Error& e) {
    return make_status(api, e.msg);
  } catch (const std::exception& e) {
    return make_status(api, std::string("DynamicMoE: ") + e.what());
  } catch (...) {
    return make_status(api, "DynamicMoE: unknown error creating the kernel");
  }
}

static OrtStatusPtr ORT_API_CALL KernelComputeV2(void* kernel, OrtKernelContext* ctx) {
  Kernel* k = static_cast<Kernel*>(kernel);
  try {
    compute(k, ctx);
    return nullptr;
  } catch (const Error& e) {
    return make_status(k->api, e.msg);
  } catch (const std::bad_alloc&) {
    return make_status(k->api, "DynamicMoE: out of memory");
  } catch (const std::exception& e) {
    return make_status(k->api, std::string("DynamicMoE: ") + e.what());
  } catch (...) {
    return make_status(k->api, "DynamicMoE: unknown error");
  }
}

static void* ORT_API_CALL CreateKernelV1(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info) {
  void* k = nullptr;
  OrtStatus* st = CreateKernelV2(op, api, info, &k);
  if (st) api->ReleaseStatus(st);
  return k;
}
static void ORT_API_CALL KernelComputeV1(void* kernel, OrtKernelContext* ctx) {
  OrtStatus* st = KernelComputeV2(kernel, ctx);
  if (st) static_cast<Kernel*>(kernel)->api->ReleaseStatus(st);
}
static void ORT_API_CALL KernelDestroy(void* kernel) { delete static_cast<Kernel*>(kernel); }
static const char* ORT_API_CALL GetName(const OrtCustomOp*) { return "DynamicMoE"; }
static const char* ORT_API_CALL GetEP(const OrtCustomOp*) { return "CPUExecutionProvider"; }
static ONNXTensorElementDataType ORT_API_CALL GetInputType(const OrtCustomOp*, size_t i) {
  return i == 6 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static size_t ORT_API_CALL GetInputTypeCount(const OrtCustomOp*) { return 8; }
static ONNXTensorElementDataType ORT_API_CALL GetOutputType(const OrtCustomOp*, size_t i) {
  return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static size_t ORT_API_CALL GetOutputTypeCount(const OrtCustomOp*) { return 2; }
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetInputCharacteristic(const OrtCustomOp*, size_t i) {
  return i < 5 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetOutputCharacteristic(const OrtCustomOp*, size_t i) {
  return i == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}
static OrtMemType ORT_API_CALL GetInputMemoryType(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
static int ORT_API_CALL GetVariadicMinArity(const OrtCustomOp*) { return 1; }
static int ORT_API_CALL GetVariadicHomogeneity(const OrtCustomOp*) { return 1; }
static int ORT_API_CALL GetStartVersion(const OrtCustomOp*) { return 1; }
static int ORT_API_CALL GetEndVersion(const OrtCustomOp*) { return std::numeric_limits<int>::max(); }
static size_t ORT_API_CALL GetNone(int** in, int** out) {
  *in = nullptr;
  *out = nullptr;
  return 0;
}
static void ORT_API_CALL ReleaseNone(int*, int*) {}

// Shape inference: Y has X's type and shape, active is int32 [B, L]. Best effort: anything unexpected leaves the
// outputs uninferred (the kernel checks shapes at run time).
const OrtApi* g_infer_api = nullptr;
static OrtStatusPtr ORT_API_CALL InferShape(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi* api = g_infer_api;
  if (!api || !ctx) return nullptr;
  auto drop = [&](OrtStatus* st) {
    if (st) api->ReleaseStatus(st);
    return st != nullptr;
  };
  OrtTensorTypeAndShapeInfo* x = nullptr;  // owned by the context
  if (drop(api->ShapeInferContext_GetInputTypeShape(ctx, 0, &x)) || !x) return nullptr;
  size_t nd = 0;
  if (drop(api->GetDimensionsCount(x, &nd)) || nd != 3) return nullptr;
  std::vector<int64_t> dims(nd);
  std::vector<const char*> sym(nd, nullptr);
  if (drop(api->GetDimensions(x, dims.data(), nd)) || drop(api->GetSymbolicDimensions(x, sym.data(), nd))) return nullptr;
  // ORT writes an unnamed unknown dim back as the value -1, which later folds into wrong constants: infer only
  // when every dim is known or named.
  for (size_t i = 0; i < nd; ++i)
    if (dims[i] < 0 && (sym[i] == nullptr || sym[i][0] == '\0')) return nullptr;
  if (drop(api->ShapeInferContext_SetOutputTypeShape(ctx, 0, x))) return nullptr;
  OrtTensorTypeAndShapeInfo* a = nullptr;
  if (drop(api->CreateTensorTypeAndShapeInfo(&a)) || !a) return nullptr;
  const char* asym[2] = {sym[0] ? sym[0] : "", sym[1] ? sym[1] : ""};
  if (!drop(api->SetTensorElementType(a, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)) && !drop(api->SetDimensions(a, dims.data(), 2)) &&
      !drop(api->SetSymbolicDimensions(a, asym, 2)))
    drop(api->ShapeInferContext_SetOutputTypeShape(ctx, 1, a));  // fails harmlessly when the node has no `active`
  api->ReleaseTensorTypeAndShapeInfo(a);
  return nullptr;
}

static OrtCustomOp make_op() {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof op);
  op.version = kOrtApiVersion;
  op.CreateKernel = CreateKernelV1;
  op.GetName = GetName;
  op.GetExecutionProviderType = GetEP;
  op.GetInputType = GetInputType;
  op.GetInputTypeCount = GetInputTypeCount;
  op.GetOutputType = GetOutputType;
  op.GetOutputTypeCount = GetOutputTypeCount;
  op.KernelCompute = KernelComputeV1;
  op.KernelDestroy = KernelDestroy;
  op.GetInputCharacteristic = GetInputCharacteristic;
  op.GetOutputCharacteristic = GetOutputCharacteristic;
  op.GetInputMemoryType = GetInputMemoryType;
  op.GetVariadicInputMinArity = GetVariadicMinArity;
  op.GetVariadicInputHomogeneity = GetVariadicHomogeneity;
  op.GetVariadicOutputMinArity = GetVariadicMinArity;
  op.GetVariadicOutputHomogeneity = GetVariadicHomogeneity;
  op.CreateKernelV2 = CreateKernelV2;
  op.KernelComputeV2 = KernelComputeV2;
  op.InferOutputShapeFn = std::getenv("MOEFY_NO_SHAPE_INFERENCE") ? nullptr : InferShape;
  op.GetStartVersion = GetStartVersion;
  op.GetEndVersion = GetEndVersion;
  op.GetMayInplace = GetNone;
  op.ReleaseMayInplace = ReleaseNone;
  op.GetAliasMap = GetNone;
  op.ReleaseAliasMap = ReleaseNone;
  return op;
}

}  // namespace

OrtCustomOp* DynamicMoeCpuOp(const OrtApi* api) {
  if (!g_infer_api) g_infer_api = api;
  // Our private (statically linked) OpenBLAS computes each GEMM on the calling thread; ORT's pool parallelises.
  static const bool blas_single = (openblas_set_num_threads(1), true);
  (void)blas_single;
  static OrtCustomOp op = make_op();
  return &op;
}

}  // namespace moefy
