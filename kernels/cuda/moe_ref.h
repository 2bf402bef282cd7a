// Host reference of ai.moefy::DynamicMoE and the shared correctness cases, used by moe_check.cu (real GPU) and
// emu/emu_check.cc (CPU emulation of the CUDA kernels). Plain C++17, no CUDA headers. The routing rules are restated
// here from docs/dynamic-moe.md, independently of kernels/src/routing_rule.h (which the kernels call).
#pragma once

#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "dynamic_moe_cuda.h"

namespace moe_ref {

// float -> nearest-even half bits (bit-exact with __float2half_rn for finite values)
inline uint16_t half_bits(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  uint32_t h;
  if (ax >= 0x7f800000u) {
    h = sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u);
  } else if (ax >= 0x477ff000u) {
    h = sign | 0x7c00u;
  } else if (ax < 0x38800000u) {
    float a;
    memcpy(&a, &ax, 4);
    h = sign | (uint32_t)std::lrint(a * 16777216.0f);
  } else {
    h = (((ax >> 23) - 127u + 15u) << 10) | ((ax & 0x7fffffu) >> 13);
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    h |= sign;
  }
  return (uint16_t)h;
}

// half bits -> float (exact)
inline float half_value(uint16_t h16) {
  const uint32_t h = h16;
  const uint32_t hs = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = (float)m * (1.0f / 16777216.0f);
    return hs ? -v : v;
  }
  const uint32_t y = e == 31 ? (hs | 0x7f800000u | (m << 13)) : (hs | ((e - 15u + 127u) << 23) | (m << 13));
  float r;
  memcpy(&r, &y, 4);
  return r;
}

// float -> nearest-even half -> float
inline float round_half(float f) { return half_value(half_bits(f)); }

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uni() { return (float)((next() >> 40) * (1.0 / 16777216.0)); }  // [0, 1)
  float sym(float a) { return (2.f * uni() - 1.f) * a; }
};

inline double act_ref(double x, int act) {
  if (act == MOEFY_CUDA_RELU) return x > 0 ? x : 0;
  if (act == MOEFY_CUDA_GELU_TANH) return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
  return 0.5 * x * (1 + std::erf(x * 0.7071067811865476));
}

struct Case {
  std::string name;
  int64_t B, L, D, E, S;
  int act;
  std::vector<int64_t> patch_nums;
  std::vector<float> thr;
  int64_t scale_index;  // -1: none
  bool b2;
  bool thr_on_device;
  bool si_host = false;  // pass scale_index by value (has_scale_index_host) instead of a device pointer
  int routing = MOEFY_CUDA_ROUTING_RELATIVE;
  bool skip = false;  // with skip_bias
};

// Random data of a case (seeded); fp16 values are pre-rounded to half so host and device see the same numbers.
struct Data {
  std::vector<float> X, N, W1, B1, W2, B2, skip;
};

// Whether each expert runs for one token (docs/dynamic-moe.md "Routing"), written plainly: sort for top-k.
inline std::vector<bool> routed(const float* nr, int64_t E, int routing, float thr) {
  std::vector<bool> on((size_t)E, true);
  if (!(thr > 0)) return on;  // t <= 0 or NaN: every expert
  int64_t am = 0;
  for (int64_t e = 1; e < E; ++e)
    if (nr[e] > nr[am] || (nr[am] != nr[am] && nr[e] == nr[e])) am = e;
  float cut = thr * nr[am];
  if (routing == MOEFY_CUDA_ROUTING_ABSOLUTE) cut = thr;
  if (routing == MOEFY_CUDA_ROUTING_TOPK) {
    std::vector<float> sorted(nr, nr + E);
    std::sort(sorted.begin(), sorted.end(), [](float a, float b) { return a > b; });
    const double skipped = std::floor((double)(thr * (float)E));
    const int64_t k = skipped >= (double)E ? 1 : E - (int64_t)skipped;
    cut = sorted[(size_t)(k - 1)];
  }
  for (int64_t e = 0; e < E; ++e) on[(size_t)e] = e == am || nr[e] >= cut;
  return on;
}

// Host reference. Inputs are the values the device sees (already rounded to half for fp16).
inline void reference(const Case& c, bool half, const Data& d, std::vector<double>& Y, std::vector<int>& active) {
  const std::vector<float>&X = d.X, &N = d.N, &W1 = d.W1, &B1 = d.B1, &W2 = d.W2, &B2 = d.B2;
  const int64_t T = c.B * c.L, D = c.D, E = c.E, S = c.S, ES = E * S;
  Y.assign((size_t)(T * D), 0.0);
  active.assign((size_t)T, 0);
  std::vector<int64_t> ends;
  int64_t sum = 0;
  for (int64_t pn : c.patch_nums) ends.push_back(sum += pn * pn);
  std::vector<double> h((size_t)S);
  for (int64_t t = 0; t < T; ++t) {
    int s = 0;
    if (c.scale_index >= 0) {
      s = (int)std::min<int64_t>(c.scale_index, (int64_t)c.thr.size() - 1);
    } else if (c.L == sum) {
      const int64_t l = t % c.L;
      while (s < (int)ends.size() - 1 && l >= ends[(size_t)s]) ++s;
    } else {
      for (size_t i = 0; i < c.patch_nums.size(); ++i)
        if (c.patch_nums[i] * c.patch_nums[i] == c.L) s = (int)i;
    }
    const std::vector<bool> on = routed(&N[(size_t)(t * E)], E, c.routing, c.thr[(size_t)s]);
    double* y = &Y[(size_t)(t * D)];
    for (int e = 0; e < E; ++e) {
      if (!on[(size_t)e]) {
        if (c.skip)
          for (int64_t k = 0; k < D; ++k) y[k] += d.skip[(size_t)(e * D + k)];
        continue;
      }
      active[(size_t)t]++;
      for (int64_t j = 0; j < S; ++j) h[(size_t)j] = B1[(size_t)(e * S + j)];
      for (int64_t k = 0; k < D; ++k) {  // k outer, j inner: W1 rows are read contiguously
        const double xk = X[(size_t)(t * D + k)];
        const float* w1 = &W1[(size_t)(k * ES + e * S)];
        for (int64_t j = 0; j < S; ++j) h[(size_t)j] += xk * w1[j];
      }
      for (int64_t j = 0; j < S; ++j) {
        double v = act_ref(h[(size_t)j], c.act);
        if (half) v = round_half((float)v);
        h[(size_t)j] = v;
      }
      for (int64_t j = 0; j < S; ++j) {
        const float* w2 = &W2[(size_t)((e * S + j) * D)];
        const double hj = h[(size_t)j];
        for (int64_t k = 0; k < D; ++k) y[k] += hj * w2[k];
      }
    }
    if (c.b2)
      for (int64_t k = 0; k < D; ++k) y[k] += B2[(size_t)k];
  }
}


inline Data make_data(const Case& c, bool half, uint64_t seed) {
  const int64_t T = c.B * c.L, D = c.D, E = c.E, S = c.S;
  Rng r(seed);
  auto gen = [&](size_t n, float a) {
    std::vector<float> v(n);
    for (auto& x : v) x = half ? round_half(r.sym(a)) : r.sym(a);
    return v;
  };
  Data d;
  d.X = gen((size_t)(T * D), 1.f);
  d.N.resize((size_t)(T * E));
  for (auto& x : d.N) x = half ? round_half(r.uni()) : r.uni();
  d.W1 = gen((size_t)(D * E * S), 1.f / std::sqrt((float)D));
  d.B1 = gen((size_t)(E * S), 0.2f);
  d.W2 = gen((size_t)(E * S * D), 1.f / std::sqrt((float)S));
  d.B2 = gen((size_t)D, 0.2f);
  d.skip = gen((size_t)(E * D), 0.3f);
  return d;
}

inline void fill_args(MoeCudaArgs& a, const Case& c) {
  memset(&a, 0, sizeof(a));
  a.device = -1;
  a.activation = c.act;
  a.routing = c.routing;
  a.B = c.B, a.L = c.L, a.D = c.D, a.E = c.E, a.S = c.S;
  a.num_patch_nums = (int)c.patch_nums.size();
  for (size_t i = 0; i < c.patch_nums.size(); ++i) a.patch_nums[i] = c.patch_nums[i];
  a.num_thresholds = (int)c.thr.size();
  for (size_t i = 0; i < c.thr.size(); ++i) a.threshold_attr[i] = c.thr[i];
}

// ||y - ref|| / ||ref||
inline double rel_error(const std::vector<float>& y, const std::vector<double>& ref, int* nonfinite) {
  double err = 0, nrm = 0;
  *nonfinite = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (!std::isfinite(y[i])) ++*nonfinite;
    const double d = (double)y[i] - ref[i];
    err += d * d;
    nrm += ref[i] * ref[i];
  }
  return nrm > 0 ? std::sqrt(err / nrm) : std::sqrt(err);
}

}  // namespace moe_ref
